"""All of cdisk's logic. Nothing here prints; progress goes through core.progress."""
