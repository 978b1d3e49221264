"""ledger/projections"""
