"""`python -m events`: the consumer groups and the sweeper (events/process/main.py)."""

from events.process.main import main

if __name__ == "__main__":
    main()
