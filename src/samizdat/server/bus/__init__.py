"""Wake-ups between connections: "(device, seq) has news", nothing else (DESIGN §7)."""
