// NetStack: placeholder until the networking work lands.
