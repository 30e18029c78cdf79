"""Everything a node does: data and partitions, models, artifacts, the Flower apps, and node.dfkd."""
