"""Agent console, supervisor wallboard and web-chat widget: pages and static assets only."""
