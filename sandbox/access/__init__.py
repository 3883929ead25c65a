"""Who may call and how much: tenants and their credentials, quotas (rate, concurrency),
and the reload of policy and tenant files."""
