"""bigtrain.data"""
