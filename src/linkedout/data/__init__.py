"""linkedout.data"""
