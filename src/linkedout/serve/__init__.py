"""linkedout.serve"""
