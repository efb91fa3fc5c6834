"""The admin listener (SPEC §9): health now; the admin API and web page join it later."""
