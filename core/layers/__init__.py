"""How a layer blob is read: its members as the engine unpacks them, plain or compressed."""
