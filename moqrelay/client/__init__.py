"""Publisher and subscriber API and command-line tools."""
