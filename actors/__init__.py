"""The roles of Foundry, one package each. Nothing here imports Ray or HTTP code."""
