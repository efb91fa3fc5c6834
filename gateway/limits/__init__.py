"""Rate limits and quotas (SPEC §11): pure rules (`policy`), per-worker lease state and the
request-path decision (`local`), and the background exchange with Redis (`sync`)."""
