"""ledger/crypto"""
