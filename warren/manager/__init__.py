"""Manager: store, consensus, scheduler, orchestrator, dispatcher, APIs."""
