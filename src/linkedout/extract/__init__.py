"""linkedout.extract"""
