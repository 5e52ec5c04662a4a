"""bigtrain.train"""
