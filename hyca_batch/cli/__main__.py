from hyca_batch.cli.commands import main

main()
