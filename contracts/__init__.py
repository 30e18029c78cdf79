"""Solidity sources of kdledger's contracts and their committed build artifacts (ABI + bytecode).

A package only so that the sources and artifacts install with kdledger; there is no Python here.
"""
