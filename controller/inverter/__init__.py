"""The inverter link (Modbus TCP/RTU, SunSpec or a vendor register map)."""
