"""The catalog: what desktops are made from.

templates  importing a golden image as a template's base volume
images     deciding whether an image file is safe to become a base
versions   template versions: a prepared desktop flattened into a new base
"""
