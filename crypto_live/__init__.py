"""crypto-live: Binance miniTicker events, losslessly, into S3 and DynamoDB via Kafka."""

__version__ = "0.1.0"
