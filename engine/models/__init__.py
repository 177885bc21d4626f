"""Every model adapter behind `engine/protocols.py`, and the zoo that names, fetches and loads them.
A new model is one file here."""
