"""Running the edge: the twistd service, worker processes, the admin site, the demo.
Imports the core package and the data path."""
