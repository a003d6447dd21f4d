from foundry.cli import main

main()
