"""Device side: live sources, `vsdmot-edge`, systemd service, profiling and power meters."""
