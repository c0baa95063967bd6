from daemon.entry import main

main()
