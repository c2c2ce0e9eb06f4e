"""
Tests of the cluster: failure detection, gossip, RPC.
"""
