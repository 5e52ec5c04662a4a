"""bigtrain.pipeline"""
