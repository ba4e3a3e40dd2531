"""What keeps the appliance's background work running: the task supervisor."""
