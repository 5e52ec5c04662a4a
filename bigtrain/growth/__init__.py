"""bigtrain.growth"""
