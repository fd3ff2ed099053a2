"""c_app: an intelligent customer-service backend (智能客服)."""

__version__ = "1.0.0"
