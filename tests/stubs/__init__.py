"""Local servers that speak providers' documented wire formats, for tests on loopback."""
