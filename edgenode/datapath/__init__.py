"""The data path: raw Twisted protocols on both sides (downstream: clients; upstream:
origins), the exchange between them, and what it counts. Imports the core package only."""
