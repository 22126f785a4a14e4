from loretune.flows.cli import main

main()
