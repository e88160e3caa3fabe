"""The SMTP path: listeners, intake (analysis + spool), upstream delivery and bounces."""
