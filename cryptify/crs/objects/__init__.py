"""Client objects: push tokens, client information and observed clients."""
