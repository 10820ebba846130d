"""Built-in target profiles (TOML data). Installed as `edgekit.profiles`; see README.md here."""
