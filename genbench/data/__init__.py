"""Image data sets behind one registry."""
