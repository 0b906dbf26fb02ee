"""Hardware-in-the-loop: simulators of the vehicle, the inverter and the plant, and the demo."""
