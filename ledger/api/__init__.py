"""ledger/api"""
