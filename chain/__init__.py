"""The Ethereum side of kdledger: compile, connect, sign, register, read back.

Never imports torch or flwr: everything here works on hashes, addresses and numbers.
"""
