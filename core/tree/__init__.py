"""The image's root and resolution in it: merged from layer tars, mounted, or stacked from layer dirs."""
