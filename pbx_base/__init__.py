"""What every other package of the project may import: the exception root and the settings.

It imports none of the project's other packages.
"""
