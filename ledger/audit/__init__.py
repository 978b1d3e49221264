"""ledger/audit"""
