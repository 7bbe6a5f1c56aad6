"""systemd: sd_notify, the unit checks, the installer, udev rules."""
