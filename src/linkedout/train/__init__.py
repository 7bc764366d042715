"""linkedout.train"""
