"""Opening an image for a command: the reading method chosen, the image opened, the disk found."""
