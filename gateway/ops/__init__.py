"""Operations helpers: systemd notification and the like."""
