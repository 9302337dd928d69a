"""SMS, Telegram and web-chat settings from SWITCHBOARD_* variables."""

from __future__ import annotations

import pytest

from gateway.settings import DEFAULT_SMS_HELP, Settings, SettingsError


def test_sms_sends_from_our_number_or_a_messaging_service_with_receipts_to_us() -> None:
    env = {
        "SWITCHBOARD_TWILIO_ACCOUNT_SID": "AC1",
        "SWITCHBOARD_TWILIO_AUTH_TOKEN": "secret",
        "SWITCHBOARD_TWILIO_SMS_FROM": "+4930555716000",
        "SWITCHBOARD_PUBLIC_URL": "https://sb.example.com/",
    }
    account = Settings.from_env(env).sms_account
    service = Settings.from_env(
        {**env, "SWITCHBOARD_TWILIO_MESSAGING_SERVICE_SID": "MG1"}
    ).sms_account

    assert account is not None and service is not None
    assert (account.from_number, account.messaging_service_sid) == ("+4930555716000", None)
    assert account.status_callback == "https://sb.example.com/webhooks/twilio/sms/status"
    assert (service.from_number, service.messaging_service_sid) == (None, "MG1")
    assert Settings.from_env({"SWITCHBOARD_TWILIO_ACCOUNT_SID": "AC1"}).sms_account is None
    assert Settings.from_env({}).sms_help_text == DEFAULT_SMS_HELP


def test_telegram_and_web_chat_settings() -> None:
    settings = Settings.from_env(
        {
            "SWITCHBOARD_TELEGRAM_TOKEN": "1:abc",
            "SWITCHBOARD_TELEGRAM_POLLING": "on",
            "SWITCHBOARD_WEBCHAT_ORIGINS": "https://shop.example.com/, https://www.example.com",
            "SWITCHBOARD_WEBCHAT_MESSAGES_PER_MINUTE": "5",
        }
    )

    assert (settings.telegram_token, settings.telegram_polling) == ("1:abc", True)
    assert settings.telegram_api_url == "https://api.telegram.org"
    assert settings.webchat_origins == ("https://shop.example.com", "https://www.example.com")
    assert settings.webchat_messages_per_minute == 5
    assert Settings.from_env({}).telegram_polling is False
    with pytest.raises(SettingsError):
        Settings.from_env({"SWITCHBOARD_WEBCHAT_MESSAGES_PER_MINUTE": "many"})
