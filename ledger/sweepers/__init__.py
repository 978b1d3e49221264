"""ledger/sweepers"""
