"""The commands, one module each: what cli/ calls once it has parsed the switches."""
