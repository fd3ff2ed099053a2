"""Answer producers behind one interface (see base.Engine)."""
